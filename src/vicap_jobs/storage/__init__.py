"""Files anywhere: local paths and object storage URLs (``s3://``, ``gs://``, ``az://``, any fsspec URL) behind one API.

Photos, annotations, artifacts and exports are *locations*: a local path as before, or a URL that
fsspec understands. Credentials and endpoints come from where the storage library reads them
(``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_ENDPOINT_URL`` / profiles / instance
roles for ``s3://``, and the same for the other clouds); vicap-jobs never takes them as settings, so
they never reach the SQL store, ``vicap-jobs config`` or a log line.

``locations``: telling URLs from paths, joining, display. ``objects``: listing image objects,
reading one with retries and a size cap, writing one (atomically where the backend allows).
Only this package imports fsspec.
"""
