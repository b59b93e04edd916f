"""Runtime: containers, their pools, and the backends that start them."""
