"""kandinsky: Kandinsky 2.x text-to-image, natively in PyTorch, from the command line."""

__version__ = "0.1.0"
