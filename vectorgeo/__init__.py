"""VectorGeo: learned embeddings of H3 cells from land-cover rasters.

The package stays light to import: heavy dependencies (TensorFlow, FAISS,
database drivers, the 1 km land mask) load inside the functions that use
them, so the Lambda handler and small scripts never pay for them.
"""

__version__ = "0.1.0"
