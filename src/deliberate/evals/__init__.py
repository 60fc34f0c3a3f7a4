"""Measuring strategies and critics against ground truth: metrics, intervals, reports."""
