"""Local training and evaluation at one site."""
