//! Images to patch nodes. (Filled in by the image work.)
