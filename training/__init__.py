"""Scripts that train the shipped models; not part of the installed package."""
