"""Training: the size plan (target ratio to network widths) and the Fitter's generator of progress."""
