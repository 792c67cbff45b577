"""megastack.data"""
