"""Evaluation: temporal-consistency and structure metrics, the scorer host, comparisons and
figures. Metric plots need matplotlib, the ``eval`` extra (``pip install 'tokenflow[eval]'``);
``tf run`` imports none of this package."""
