"""Timing harness behind ``ffsplit bench``."""
