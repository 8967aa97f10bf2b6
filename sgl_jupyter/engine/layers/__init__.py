"""Model building blocks; each knows its math in torch and, on CUDA, may dispatch to a kernel."""
