"""Image corruption: the Distorter interface and its built-ins."""
