"""megastack.growth"""
