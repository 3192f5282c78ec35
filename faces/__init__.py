"""Face detection (MTCNN), the one crop path, the resumable crop cache, the greyscale policy and
the faces metrics.
"""
