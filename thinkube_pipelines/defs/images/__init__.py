"""The image graph: one asset chain per folder of images/, with its smoke check and jobs."""
