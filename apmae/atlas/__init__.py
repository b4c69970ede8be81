"""The head atlas: every head-level result of a run joined on one self-contained page.

- :mod:`apmae.atlas.sources`: find each stage's per-head table in a run's artifact folders
  and join them into columns (a stage the run lacks is a missing column, never filled in);
- :mod:`apmae.atlas.thumbnails`: mean patterns and family medoids, downsampled to uint8 thumbnails;
- :mod:`apmae.atlas.page` and :mod:`apmae.atlas.assets`: ``index.html`` with its data, CSS and script inline;
- :mod:`apmae.atlas.figures`: the grid as PNG and SVG;
- :mod:`apmae.atlas.run`: the ``apmae atlas`` stage.
"""
