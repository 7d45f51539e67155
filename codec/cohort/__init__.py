"""Many volumes at once (`moec batch`): a cohort compressed on dask.distributed, and its report.

One job a module: `jobs` (the settings, one job and one row per volume), `discover` (finding the
volumes and their outputs), `manifest` (the CSV that makes a run resumable), `task` (one volume
compressed on a worker), `engine` (the dask cluster that runs the tasks), `run` (the run as a
generator of events, which prints nothing) and `report` (the cohort at a glance).
"""
