//! The synthetic longitudinal oncology generator.
