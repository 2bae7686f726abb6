"""Box geometry with no model attached: oriented boxes (DOTA/mmrotate conventions), their polygons,
rotated IoU and NMS as tensor ops. Detection models, tilers, evaluation and the DOTA splitter all
use it; it imports only torch and NumPy. Import the submodules directly."""
