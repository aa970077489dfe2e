"""Loading models, reading data, signatures and the environment a model needs."""
