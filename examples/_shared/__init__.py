"""Helpers shared by the examples (run directory, figures, chemistry); not part of the library."""
