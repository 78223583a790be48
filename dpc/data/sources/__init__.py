"""Mesh sources of the dataset builder: procedural cars and chairs, FlightGear airplanes
(AC3D via assimp), and folders of mesh files."""
