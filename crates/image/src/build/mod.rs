//! Building images from a Dockerfile. (Being built.)
