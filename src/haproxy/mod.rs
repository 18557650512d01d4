//! haproxy (in progress)
