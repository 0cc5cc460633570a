import os,sys,json,time,numpy as np,torch,ml_dtypes
sys.path.insert(0,'.');O=os.environ['OUT']
from hspi_kernels.numerics import attention_ref as R,attention_plan as AP,plans as P
from hspi_kernels.numerics.evaluate import gemm
from hspi_kernels.trace import sdpa_orders as SO
from hspi_kernels.kernels.cuda import sfu as SF,gemm_tensor_core as G
F=np.float32;res={};bins=[(0,e) for e in range(4)]
SF.save_table(O,'lg2',bins,SF.binade_outputs('lg2',bins),workers=8)
rec=R.SfuOutputs(record=SF.LiveSfu())
a=np.arange(-70,71).astype(F);A,B=(x.ravel() for x in np.meshgrid(a,a));c=F(.125*1.4426950408889634)
with np.errstate(all='ignore'):
 for f in(R.fma32(A,c,-(B*c).astype(F)),((A*c).astype(F)-(B*c).astype(F)).astype(F),((A-B)*c).astype(F),(((A-B)*F(.125)).astype(F)*R.L2E).astype(F)):rec.apply('ex2_ftz',f[f<=0])
z=np.load('tests/data/sdpa_h200/cases.npz');org=R._scores
pl=AP.AttentionPlan(block_n=128,tile=128,domain='log2',exp='sfu',walk='flash2',recip='sfu')
def hw(Q,K):
 t=lambda x:torch.from_numpy(np.ascontiguousarray(x)).to(torch.bfloat16).cuda()
 return G.mma_sync_gemm(t(Q),t(K.T),in_format='bf16').float().cpu().numpy()
D={'plan':None,'sm80':P.tensor_core_gemm('bf16','fp32',path='mma.sync',arch='sm_80'),'seqfma':P.Sequential('fp32',fma=True),'pairwise':P.Pairwise(),'exact':1,'hw_mma':2}
for n in('qwen2.5-0.5b','gpt2-small','llama-3.2-1b'):
 q,k,v=(z[f'{n}/{x}'].view(ml_dtypes.bfloat16).astype(F) for x in 'qkv');w=z[f'{n}/flash/lse'].view(np.uint32);wo=z[f'{n}/flash/out'];base=None
 for dn,dp in D.items():
  def sc(p,Q,K,V,Skp,be,dp=dp):
   S,Vp=org(p,Q,K,V,Skp,be)
   if dp is None:return S,Vp
   Kp=np.zeros((K.shape[0],Skp,K.shape[2]),F);Kp[:,:K.shape[1]]=K
   if dp==1:return np.einsum('bqd,bkd->bqk',Q.astype(float),Kp.astype(float)).astype(F),Vp
   if dp==2:return np.stack([hw(Q[b],Kp[b]) for b in range(len(Q))]),Vp
   return np.stack([gemm(dp,Q[b],np.ascontiguousarray(Kp[b].T),backend='numpy') for b in range(len(Q))]),Vp
  R._scores=sc
  o,l=AP.evaluate_attention(pl,q,k,v,fmt='bf16',causal=True,sfu=rec,with_lse=True,backend='numpy');R._scores=org
  lb=l.view(np.uint32);base=lb if base is None else base
  res[n+'/'+dn]=[int((SO._bits(o,'bf16')==wo).sum()),int((lb==w).sum()),int(w.size),int((lb!=base).sum())];print(n,dn,res[n+'/'+dn],flush=True)
np.savez_compressed(O+'/rec.npz',**rec.to_arrays());json.dump(res,open(O+'/res.json','w'))
