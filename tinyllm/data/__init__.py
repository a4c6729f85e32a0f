"""Data for every stage: text cleaning, token datasets and batching, task data."""
