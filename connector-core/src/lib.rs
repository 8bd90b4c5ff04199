//! Piko connector core (being written).
