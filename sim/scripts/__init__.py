"""Console scripts of the sim package (vla-collect, vla-demo)."""
