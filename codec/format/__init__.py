"""The .moec file: the container, the header and the coded payload."""
