"""Where examples come from: dataset files, images, the bundled demo scenes."""
