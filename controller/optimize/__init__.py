"""The variant factory: one trained model in, a signed bundle of measured variants out."""
