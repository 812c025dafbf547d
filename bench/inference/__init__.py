"""Stage 5, finished runs and ensemble entries -> predictions on any images and portable graphs: image sources
(sources.py: an image, a folder, a list file; unreadable files named and skipped), the predictor (predict.py: a
run's or an entry's networks, TTA views, combiner and decision rule, exactly as bench.ensemble scored them; or an
exported ONNX graph) and the ONNX export (onnx_export.py). Reads artifacts only; nothing upstream imports it."""
