"""Many volumes at once: `moec batch` on dask.distributed, and the cohort's report."""
