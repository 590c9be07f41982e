"""odock.admin"""
