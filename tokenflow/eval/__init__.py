"""Evaluation: temporal-consistency and structure metrics, the scorer host, comparisons and
figures. Needs the ``eval`` extra (OpenCV, matplotlib); ``tf run`` does not import it."""
