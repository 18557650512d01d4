//! bird (in progress)
