"""The web app: detect (score, box, uncertainty, Grad-CAM) and generate tabs, served with Gradio."""
