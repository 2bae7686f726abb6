"""Many scenes: sources in, one scene per task on Ray or locally, a manifest, STAC and mosaics out.

* ``sources``: STAC catalogues / collections / items (``pystac``), folders, globs, path lists and
  before/after CSVs → ``SceneTask`` s;
* ``manifest``: the append-only JSONL record of every scene's status, outputs and timings, and
  the settings fingerprint a rerun must match;
* ``worker``: a model loaded once, each scene through ``vitp_geo.inference.infer_scene``;
* ``engines``: the local engine (this process, or a pool of processes) and the Ray engine
  (``vitp-geo[cluster]``);
* ``outputs``: the STAC collection of the outputs, VRT mosaics of the class maps and merged
  detection GeoPackages, per CRS;
* ``runner``: ``run_catalogue``, what ``vitp-geo infer-catalog`` calls.
"""
