"""What every stage shares: atomic writes, file arguments, optional imports,
the triangle order, head tables, the MLflow helpers and the statistics of reported numbers.

- :mod:`apmae.common.atomic`: directories and files that appear complete or not at all;
- :mod:`apmae.common.files`: one path, a quoted glob or a list of paths;
- :mod:`apmae.common.optional`: optional dependencies, or the extra that installs them;
- :mod:`apmae.common.allocator`: the allocator tuning extraction entry points opt into;
- :mod:`apmae.common.cores`: the CPU cores this process may use;
- :mod:`apmae.common.triangle`: one lower-triangle order, gather and scatter;
- :mod:`apmae.common.head_tables`: per-head CSV tables and L x H heatmaps;
- :mod:`apmae.common.h5shards`: the resumable, sharded HDF5 row store of caches and encodings;
- :mod:`apmae.common.tracking`: the MLflow store and the runs of a trainer;
- :mod:`apmae.common.stats`: bootstrap intervals, exact tests and multiple-comparison control of reported numbers.
"""
