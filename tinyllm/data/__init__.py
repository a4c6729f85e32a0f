"""Data for every stage: text cleaning, token datasets and batching, task data."""
from .text import clean_text, dedupe
