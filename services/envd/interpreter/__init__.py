"""The code-interpreter surface (port 49999): contexts backed by Jupyter kernels and the
streaming /execute endpoint the e2b-code-interpreter SDK talks to."""
