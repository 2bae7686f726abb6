"""medical"""
