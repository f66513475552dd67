"""Triton kernels (installed as igot.kernels). Each module holds its kernels, launchers and autograd
Function; the pure-torch twin of each lives in igot.ops. Importing this package imports no triton."""
