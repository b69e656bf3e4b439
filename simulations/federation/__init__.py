"""The simulated federation: its Flower apps, synthetic devices, held-out users, attacks, the in-process driver."""
