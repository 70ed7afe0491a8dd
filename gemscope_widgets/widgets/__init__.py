"""anywidget front ends. They call the backend; the backend never imports them."""
