"""The stage cache: content-addressed Zarr stores, one per stage output."""

from tokenflow.cache.keys import canonical_json, stage_key
from tokenflow.cache.store import CacheEntry, StageCache

__all__ = ["CacheEntry", "StageCache", "canonical_json", "stage_key"]
