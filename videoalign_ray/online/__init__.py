"""Online, iterative preference collection: pair selection, the pair store, generation actors, the loop."""
