# The MLflow tracking server of deploy/compose.yaml: the official image plus what the
# cluster recipe needs: basic auth (Flask-WTF, the `auth` extra), the PostgreSQL
# driver (psycopg 3, named in the URIs as postgresql+psycopg://) and boto3 for the
# S3 (MinIO) artifact store.  Versions as in constraints.txt.
FROM ghcr.io/mlflow/mlflow:v3.17.2
RUN pip install --no-cache-dir "mlflow[auth]==3.17.2" "psycopg[binary]==3.3.9" "boto3==1.44.5"
