import uuid

from django.db import models
from django.db.models import Q


class Customer(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    email = models.EmailField(unique=True)
    active = models.BooleanField(default=True)
    profile = models.JSONField(default=dict)
    joined_at = models.DateTimeField()


class Tag(models.Model):
    name = models.CharField(max_length=50, unique=True)


class Order(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="orders")
    token = models.UUIDField(default=uuid.uuid4, unique=True)
    total = models.DecimalField(max_digits=12, decimal_places=2)
    paid = models.BooleanField(default=False)
    placed_at = models.DateTimeField()
    data = models.JSONField(null=True)
    tags = models.ManyToManyField(Tag, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(total__gte=0), name="order_total_not_negative"),
            models.UniqueConstraint(fields=["customer", "placed_at"], name="one_order_per_moment"),
        ]
