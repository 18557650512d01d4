//! Observed HAProxy state (in progress)
