"""Text corruption: the Hallucinator interface and its built-ins."""
