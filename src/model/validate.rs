//! Wire document → DesiredState (in progress)
