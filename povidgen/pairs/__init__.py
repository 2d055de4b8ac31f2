"""Assembling examples, hallucinations and distortions into preference pairs."""
